"""The core of petl: what every strategy, the trainer and the benchmark share.

* :mod:`petl.core.config`: :class:`StrategyConfig`, the base of every strategy's options;
* :mod:`petl.core.validators`: the checks configs are built from (public, for plugins);
* :mod:`petl.core.strategy`: the :class:`Strategy` protocol and :class:`StrategyBase`;
* :mod:`petl.core.registry`: the open, string-keyed registry (and its entry points);
* :mod:`petl.core.wrapping`: ``wrap``, ``unwrap``, ``merge`` and the record on the model;
* :mod:`petl.core.heads`: the task head trained in full on a strategy's behalf;
* :mod:`petl.core.params`: parameter counts;
* :mod:`petl.core.io`: ``save`` and ``load`` (safetensors plus JSON);
* :mod:`petl.core.peft_folders`: reading adapter folders written by peft;
* :mod:`petl.core.pretrained`: the ``save_pretrained`` a wrapped model gets (Trainer, TRL);
* :mod:`petl.core.distributed`: gathering sharded (FSDP2) tensors for saving.
"""
