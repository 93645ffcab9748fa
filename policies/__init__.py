"""The policy packs shipped with goex (YAML files beside this one), installed as `goex.policies`."""
