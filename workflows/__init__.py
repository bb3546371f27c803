"""The product around the method: typed configs and the `prift` command line."""
