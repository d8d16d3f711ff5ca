"""docker-machine's policy pack: ``pulumi preview --policy-pack policy`` (docs/policy.md)."""
