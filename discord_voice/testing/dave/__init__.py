"""The fake's side of DAVE end-to-end encryption: Discord's role in each channel's MLS group.

- `mls`: the MLS external sender the voice gateway plays (op 25, external proposals, op 28
  splitting), built on ``cryptography`` only.
- `wire`: small parsers beyond `mls` (key package identity, a commit's epoch and ProposalRefs,
  DAVE protocol frames).
- `members`: the group's participants: our clients (through their websocket) and libdave
  members hosted in the fake (dave-py, Discord's C++ libdave).
- `group`: one channel's group: proposals, commits, transitions, downgrade and upgrade.
- `media`: what the UDP server learns from DAVE about a frame (libdave decryptors per sender,
  the plaintext rule).
- `hub`: every channel's group in one fake, stage channels, hosted members.

Needs ``dave-py`` (except `mls` and `wire`). Implementation of
`discord_voice.testing.FakeDiscord`, which is the way to use it. Nothing is imported here, so
that `mls` and `wire` load without dave-py.
"""
