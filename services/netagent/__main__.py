from pinet.services.netagent.app import main

main()
