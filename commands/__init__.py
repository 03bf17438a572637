"""The write model: commands are validated here and appended to the log as events.

The event envelope (`commands.envelope`) and the fold (`commands.fold`) are the write model's contract;
every other package imports them from here.
"""
