"""Started by ``python -m pulumi.policy ENGINE policy``: serve the rules for the stack being deployed (docs/policy.md).

The language host has put the stack's config in PULUMI_CONFIG (and PULUMI_STACK, PULUMI_DRY_RUN) before this runs.
"""

import os
import sys

# The project's own modules (type tokens, dockerd's flags, provisioning's paths) come from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pulumi_policy import PolicyPack  # noqa: E402

from policy import rules  # noqa: E402

PolicyPack(name="docker-machine", policies=rules.policies(rules.Stack.from_env()))
