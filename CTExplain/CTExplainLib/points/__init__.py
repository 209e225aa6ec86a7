"""Models read at points a user marks: the box a point model sees (:mod:`.crop`)."""
