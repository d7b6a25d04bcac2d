"""NOT FOR PRODUCTION: development keys and the local demo stack (make run)."""
