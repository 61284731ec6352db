"""Invoke tasks: `invoke --list` shows them all.

This file stays thin: each task module under fleet/cli/ parses its options
and calls the fleet package.
"""

from invoke import Collection

from fleet.cli import load_task_modules

ns = Collection()
for module in load_task_modules():
    for task in Collection.from_module(module).tasks.values():
        ns.add_task(task)
