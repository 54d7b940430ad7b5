"""The fake's two websocket servers: Discord's main gateway (v10) and voice gateway (v8).

- `ws`: websockets' sync server wrapped so that every thread is named, tracked and joined; the
  `Peer` a connection handler talks to and the exceptions that end a connection (`CloseWith`).
- `served`: the connection loop both gateways share (posted scripted actions, shutdown).
- `checks`: shape checks for what clients send, answered with Discord's close codes.
- `main`, `main_resume`: the main gateway and its sessions that outlive a websocket (op 6).
- `voice`, `voice_handshake`, `voice_live`, `voice_dave`: the voice gateway, its connect-flow
  handlers, its sessions that outlive a websocket (op 7) and a connection's DAVE membership.
- `voice_roster`: each channel's ready sessions and the members the fake plays (ops 11/13).

Implementation of `discord_voice.testing.FakeDiscord`, which is the way to use it. Nothing is
imported here, so that each module loads only what it needs.
"""
