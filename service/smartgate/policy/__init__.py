"""The pure decision: FhirRequest + TokenContext -> Decision or a plan of look-ups. No I/O, no protobuf, no
httpx."""
