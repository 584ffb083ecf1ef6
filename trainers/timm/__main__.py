from trainers.child import run_as_main

run_as_main("trainers.timm", "trainers.timm.train")
