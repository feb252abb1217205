"""ml_collections configs: each module's get_config(arg) returns one run's settings as data."""
