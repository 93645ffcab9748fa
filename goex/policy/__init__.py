"""Declarative policy: packs of rules (YAML data, no code) compiled once, decided per action.

A rule matches on the action type, the paths it targets, and fields of the adapter's preview;
every matching rule is reported and the most restrictive decision wins (deny > confirm > allow).
An action no rule matches is allowed. Rules written in Python (`PythonRule`) are added to a
compiled pack with `Policy.with_rules` and decide the same way. See docs/policy.md.

- `schema.py`: what a pack is (rules, matches, budgets) and what deciding yields
- `fields.py`: which action types and preview fields a rule may name (from the adapters' models)
- `engine.py`: deciding, and the workspace's own rules (protected paths, owned paths, budgets)
- `globs.py`: action type and path globs
- `loading.py`: shipped packs, YAML files, `extends`
"""

from .engine import Policy, WorkspaceRules
from .globs import glob_regex
from .loading import load_policy, parse_pack, shipped_packs
from .schema import (
                     ALLOW,
                     BUDGETS,
                     Decision,
                     Each,
                     Match,
                     Pack,
                     PolicyError,
                     PythonRule,
                     Rule,
                     RuleMatch,
                     Severity,
                     Threshold,
                     Verdict,
)

__all__ = ["ALLOW", "BUDGETS", "Decision", "Each", "Match", "Pack", "Policy", "PolicyError", "PythonRule", "Rule",
           "RuleMatch", "Severity", "Threshold", "Verdict", "WorkspaceRules", "glob_regex", "load_policy",
           "parse_pack", "shipped_packs"]
