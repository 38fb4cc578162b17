"""Small shared helpers: atomic file output, CLI errors, logging, config and device set-up."""
