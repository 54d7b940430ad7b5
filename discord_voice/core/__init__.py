"""The sans-I/O core: codecs, state machines and arithmetic, with no sockets, threads or clocks.

Everything here takes bytes, strings and ``now`` values and returns bytes, strings and events.
A test (tests/test_hygiene.py) enforces that no module in this package imports socket,
threading, time, select, websocket or any of the threaded layers.

Reading order: opcodes -> payloads -> voice_gateway / pacemaker / pacing -> ipdiscovery / rtp /
crypto -> frames -> packetizer; main_gateway is the main (non-voice) gateway's protocol.
"""
