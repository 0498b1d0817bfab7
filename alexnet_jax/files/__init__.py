"""Files of a run and of a data_dir: local or remote paths, folder locks."""
