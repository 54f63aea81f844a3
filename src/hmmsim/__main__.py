from hmmsim.cli import main

main()
