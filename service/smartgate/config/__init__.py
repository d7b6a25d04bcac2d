"""The configuration: its model, the YAML reader with dotted-key errors, and the identity-provider profiles."""
