"""The course's own tooling, not chapter content: lab generation and guards (:mod:`.labs`), stored lesson outputs
(:mod:`.outputs`), a learner's progress (:mod:`.progress`), the machine check (:mod:`.doctor`) and the lessons'
live widgets (:mod:`.widgets`). Each keeps its old path too (``course_utils.labs``,
``python -m course_utils.doctor``)."""
