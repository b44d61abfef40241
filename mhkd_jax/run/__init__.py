"""Run management: what a run leaves on disk and how it talks to a person.

``records`` (config.json, the eval history, results), ``checkpoints``
(orbax: training checkpoints and teachers), ``preemption`` (SIGTERM agreed
across processes), ``progress`` (the progress line), ``metric_writers``
(the log and TensorBoard event files, without TensorFlow),
``periodic_actions`` (what the loop runs every so many steps), ``paths``
(local or ``gs://``), ``cli`` (command-line errors and logs), ``errors``
(the errors whose message is the fix), ``validation`` (every impossible
config value, before a run starts) and ``platform`` (what 'auto' defaults
stand for on the devices present).
"""
