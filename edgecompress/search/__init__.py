"""The recipe search (issue 13): let the device's budgets choose the recipe.

`export --search` runs a ladder of candidates, cheap to expensive, each as a normal export into a work
folder, reads every candidate's figures back from its report.json, and ships the most accurate one that meets
every budget to OUTPUT/<device>/ exactly as a normal export would, with candidates.json and report.html
beside it. The search is a layer on top of `run_export`: it never reaches into the stages.

    candidates.py  the ladder: which candidates, in what order, which one each is "heavier" than
    loop.py        runs the ladder: skips branches that cannot win, estimates time left, ships the winner
    table.py       a candidate's row from its report.json, the winner rule, candidates.json and the table
    loyalty.py     a student's agreement with the original model (its own export judges it against itself)
    publish.py     the shipped folder's search files: candidates.json, report.json/.md sections, report.html
"""
