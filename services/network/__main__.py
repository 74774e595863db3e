from services.network.app import main

main()
