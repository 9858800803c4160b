"""The few Shakespeare lines the harvest, scores and browser tests import as a corpus."""

TEXTS = [
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "All the world's a stage, and all the men and women merely players.",
    "Double, double toil and trouble; fire burn and cauldron bubble.",
    "If music be the food of love, play on.",
]
