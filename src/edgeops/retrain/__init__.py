"""Retraining: policies, triggers, challenger against champion, and the decisions taken.

See :mod:`edgeops.retrain.run` for one retraining and :mod:`edgeops.retrain.watch` for
running the policies continuously; docs/retraining.md for the user's view.
"""

from .policy import RetrainPolicy, parse_policy
from .run import Trigger, decisions, retrain, settle
from .store import list_policies, load_policy, set_policy
from .watch import RetrainWatcher, check_triggers

__all__ = [
    "RetrainPolicy",
    "RetrainWatcher",
    "Trigger",
    "check_triggers",
    "decisions",
    "list_policies",
    "load_policy",
    "parse_policy",
    "retrain",
    "set_policy",
    "settle",
]
