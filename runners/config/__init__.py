"""Configs: the typed schema of every group, where the YAML files live, and the wrapper every
command runs its Hydra job in.
"""
