"""The Notion sync: pages of a Notion data source become tasks; task status flows back.

``mapping`` (page JSON ↔ our vocabulary, pure), ``status_edits`` (what a status edit asks for,
pure), ``client`` (the notion-client adapter: rate limit, errors), ``sync`` (pull, apply, push,
watermark), ``command`` (``pipeline sync-notion``) and ``cron`` (a round in the workers).
"""
