"""Suite and sweep YAML files, installed as ``attnbench.configs``."""
