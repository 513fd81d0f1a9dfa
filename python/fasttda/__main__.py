from fasttda.cli import main

main()
