from streamcascade.cli import main

main()
