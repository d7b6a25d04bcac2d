"""The decision path with its I/O edges: public routes, token verification, the policy, FHIR look-ups, decision
and audit logs."""
