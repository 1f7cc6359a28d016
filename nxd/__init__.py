"""The application: the `nxd` command, which drives the library (`nx_dagster`) through the Dagster code
location (`assets`)."""
