"""The way every inference request goes, whatever its protocol: its model, deadline, cache, admission, batcher
and the answer to what went wrong; and what one worker serves with (model_server)."""
