"""Who is asking: the bearer token, JWS reading, OpenID discovery, key sets, verification, introspection,
the SMART context and scopes."""
