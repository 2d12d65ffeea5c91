from tunggal.cli import main

main()
