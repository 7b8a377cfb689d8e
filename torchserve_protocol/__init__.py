"""TorchServe's protocol as this project uses it, each fact written once: where things lie (:mod:`.layout`), how
archives are named and versions ordered (:mod:`.archives`), the model store's own files ``defaults.json`` and
``canary.json`` (:mod:`.store`), the key file, the invalid-key answer and the one key renewal policy
(:mod:`.keys`), and the handler's request limits (:mod:`.limits`).

The lowest floor of the house: standard library only and nothing of the project, so the gateway's slim image, the
TorchServe image, the training job and the handler inside each ``.mar`` can all carry it.
"""
