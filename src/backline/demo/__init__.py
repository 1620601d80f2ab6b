"""`backline demo`: the whole loop on one machine, told as a story that checks itself.

    from backline.demo.story import DemoOptions, run_demo
    outcome = run_demo(DemoOptions(root=Path("demo-project")))
    outcome.passed, outcome.checks          # each claim the narration made, and whether it held

`replay` holds what the demo and the monitoring tests share: replaying transactions through a
running server and writing the log rows a server would write. Like `pipeline` and `cli`, this
package wires the stages together; no stage imports it.
"""
