"""Who is asking: the bearer token, JWS reading, key sets, verification, introspection, the SMART context and
scopes."""
