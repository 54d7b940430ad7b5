"""The fake's voice UDP server: IP discovery, RTP parsing and decryption, seeded impairment.

- `server`: `FakeUdpServer`, one socket for every voice session, recording decrypted frames.
- `packets`: server-side codecs (IP discovery, RTP, both AEAD modes), independent of
  `discord_voice.core` and of PyNaCl.
- `impairment`: drop, duplicate, reorder and delay on the receive path (`FakeDiscord.impair_udp`).

Implementation of `discord_voice.testing.FakeDiscord`, which is the way to use it. Nothing is
imported here, so that each module loads only what it needs.
"""
