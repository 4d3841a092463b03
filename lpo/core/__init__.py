"""The pipeline: read a SavedModel, decide a plan, rewrite the graph, convert the checkpoint.

``savedmodel``/``signature``/``tf2`` read models, ``graph`` indexes and matches GraphDefs,
``plan`` holds the plan and its manifest, ``checkpoint`` streams checkpoint conversion,
``optimizer`` ties them into the public ``optimize``/``inspect_model``/``convert_ckpt``/``refresh``.
"""
