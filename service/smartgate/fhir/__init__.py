"""FHIR R4 knowledge and parsing: definitions, the Patient compartment, query strings, requests, resource bodies.
Knows nothing of tokens."""
