"""The wire contract between a clinic's ClientApp and the coordinator's ServerApp.

Both apps import this package and never each other. It holds what travels in Flower messages:
- `records`: record keys, message types and the protocol version;
- `schedule`: the two phases and which weights each one exchanges;
- `instructions`: `RoundInstructions`, what the server asks of a clinic each round;
- `arrays`: numpy state <-> Flower ArrayRecords, with checks made before anything is decoded;
- `replies`: the typed metrics a clinic replies with, validated the same way on both sides;
- `site_names`: the names a clinic may go by.
"""
