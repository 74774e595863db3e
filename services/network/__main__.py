from pinet.services.network.app import main

main()
