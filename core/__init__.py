"""What train/, serve/ and ui/ all need: the one chat template, the adapter store, schemas and settings."""
