"""The configuration: ``model`` (the frozen types, each key and default once), ``parse`` (YAML → model, with
dotted-key errors) and ``profiles`` (where each identity provider puts the SMART claims).

Import from the submodules: this package imports nothing, so importing ``model`` pulls in no YAML.
"""
