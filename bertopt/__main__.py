from bertopt.cli.main import main

main()
