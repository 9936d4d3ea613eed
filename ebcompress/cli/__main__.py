from ebcompress.cli.app import main

main()
