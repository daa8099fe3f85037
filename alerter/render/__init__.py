"""Each channel's payload, built without IO: Slack text and blocks, email parts, the webhook
body, the console summary; and the check of every receiver's templates against samples.

All of them render from the one context of `alerter.templates`; the notifiers send what
these build.
"""
