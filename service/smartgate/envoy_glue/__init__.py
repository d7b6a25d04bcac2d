"""Protobuf in, protobuf out: the ext_authz Check and ext_proc services, and the rendering of Envoy's
configuration."""
