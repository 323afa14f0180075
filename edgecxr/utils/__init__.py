"""Infrastructure: typed errors and exit codes, atomic writers, quiet framework start-up, CPU features."""
