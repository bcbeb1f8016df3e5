"""Usage and cost: the ledger of server sessions, their prices and the budgets they count
against. Pure policy (``pricing``, ``budgets``) apart from the database (``ledger``)."""
