"""petl inside other training frameworks: ``transformers.Trainer`` and TRL.

    trainer = transformers.Trainer(model=petl.wrap(model, "adalora"), ...)
    petl.attach(trainer)          # the one line: strategy hooks, and loading petl checkpoints
    trainer.train()
    trainer.save_model("out")     # writes the adapter folder, as petl.save does

See :mod:`petl.integrations.trainer`.
"""

from __future__ import annotations

from petl.integrations.trainer import PetlCallback, attach

__all__ = ["PetlCallback", "attach"]
