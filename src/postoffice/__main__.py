from postoffice.cli import main

main()
